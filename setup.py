"""Build the optional C extensions; without a compiler ocilayer installs and runs without them.

`ocilayer._packer` writes the common entries of a base layer export,
`ocilayer._compare` compares file contents on its own thread during a diff export,
`ocilayer._filerun` creates runs of plain files, symlinks and directories when a layer
is applied, and `ocilayer._writeback` starts writing an output file on ext4 to disk
while it grows.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("ocilayer._packer", sources=["src/ocilayer/_packer.c"], optional=True),
        Extension("ocilayer._filerun", sources=["src/ocilayer/_filerun.c"], optional=True),
        Extension("ocilayer._compare", sources=["src/ocilayer/_compare.c"], optional=True),
        Extension("ocilayer._writeback", sources=["src/ocilayer/_writeback.c"], optional=True),
    ]
)
