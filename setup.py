"""What pyproject.toml cannot say without an experimental table: the disguise check's byte
walks in C (app/audio/_scan.c), compiled by `pip install`."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("app.audio._scan", ["app/audio/_scan.c"], extra_compile_args=["-O3"]),
    ],
)
