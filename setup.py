"""Build hook: wheels carry the shipped checkpoints and device embeddings.

They live beside the package in a checkout (`checkpoints/`, `device_embeddings/`); a wheel
copies them into `predictor/_shipped/` so that an installed latpred predicts out of the
box (`predictor.locations` finds either). Everything else is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED_FOLDERS = ("checkpoints", "device_embeddings")  # as predictor.locations


class BuildPyWithShipped(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout's folders
        for folder in SHIPPED_FOLDERS:
            shutil.copytree(ROOT / folder, Path(self.build_lib) / "predictor" / "_shipped" / folder,
                            dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*", "*.lock"))


setup(cmdclass={"build_py": BuildPyWithShipped})
