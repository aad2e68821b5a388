"""Map the three source folders onto the `lmkit` import name.

`packages` is listed per root with find_packages: with `package-dir` alone, a new sub-package
(plugins/bert/) imports in an editable install but is missing from the wheel.
"""
import os

from setuptools import find_packages, setup

ROOTS = {"lmkit": "toolkit", "lmkit.plugins": "plugins", "lmkit.exports": "exports"}

packages, package_dir = [], {}
for name, folder in ROOTS.items():
    if not os.path.isfile(os.path.join(folder, "__init__.py")):
        continue
    package_dir[name] = folder
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=package_dir)
