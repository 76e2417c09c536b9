"""Build hook: generate the gRPC stubs from proto/ before packaging.

Everything else about the package lives in pyproject.toml. Generated stubs
land in the source tree (lepton/v1/, git-ignored) so that both regular and
editable installs see them.
"""

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

_HERE = Path(__file__).resolve().parent


def _protogen():
    spec = importlib.util.spec_from_file_location("_lepton_protogen", _HERE / "lepton" / "protogen.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class BuildPyWithProtos(build_py):
    def run(self):
        _protogen().generate()
        super().run()


setup(cmdclass={"build_py": BuildPyWithProtos})
