"""forkrl.operator: the kopf operator reconciling `RLVRJob` custom resources (see operator/README.md).

Run it with `python -m forkrl.operator`; generate its CRD and chart files with `forkrl crd --write`.
Importing the package imports nothing else (the builders, the CRD generator and the handlers are
separate modules).
"""
