"""Build the optional C packer; without a compiler ocilayer installs and runs without it."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "ocilayer._packer",
            sources=["src/ocilayer/_packer.c"],
            optional=True,
        )
    ]
)
