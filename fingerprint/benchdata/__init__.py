"""The benchmark-data builder: stand-in membership benchmarks in the ImageCLEFmedical GANs 2023 layout.

No pipeline stage imports it: it makes data for them. `synth` builds a
benchmark (`fingerprint synth`) from real images (`realimages`: procedural
CT-like phantoms from `anatomy` + `phantom`, or a folder of images) and a
generator of a registered family (`generators`) trained on the "used" ones;
`difficulty` measures how hard the result is.

May import: `fingerprint.core`, `fingerprint.imaging` and `fingerprint.evaluation` only, so the data
builder never depends on the detector it tests. Only `fingerprint.tasks`, `fingerprint.api` and the
command line import it.
"""
