"""Maps the fixed top-level folders onto the `forkrl` namespace (see pyproject.toml)."""

from setuptools import find_packages, setup

FOLDERS = {"operator": "forkrl.operator", "trainer": "forkrl.trainer", "rollout": "forkrl.rollout"}

packages = []
for folder, name in FOLDERS.items():
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(folder)]

setup(
    packages=packages,
    package_dir={name: folder for folder, name in FOLDERS.items()},
    package_data={name: ["**/*.yaml", "**/*.json", "**/*.jsonl", "**/*.txt"] for name in FOLDERS.values()},
)
