"""Shared foundations: errors, atomic files, logging, config options, vocabulary, locks,
stage records and the accelerator set-up.

Imports nothing else from `fingerprint`; every other subpackage may import it.
"""
