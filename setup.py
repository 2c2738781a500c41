"""Package discovery: `xlstm_lm/` as is, `kernels/` under the import name `xlstm_lm_kernels`.

A top-level module named `kernels` would shadow the popular PyPI package of that
name, so the folder keeps its design-card name and installs under a distinct one.
"""

from setuptools import find_packages, setup

kernel_packages = ["xlstm_lm_kernels"] + [f"xlstm_lm_kernels.{p}" for p in find_packages("kernels")]
setup(
    packages=find_packages(include=["xlstm_lm", "xlstm_lm.*"]) + kernel_packages,
    package_dir={"xlstm_lm_kernels": "kernels"},
)
