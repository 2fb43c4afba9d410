"""Packaging for mlops: metadata and requirements come from settings.ini (nbdev 2.x)."""
from configparser import ConfigParser

import setuptools

cfg = ConfigParser(delimiters=["="])
cfg.read("settings.ini", encoding="utf-8")
cfg = cfg["DEFAULT"]

requirements = cfg.get("requirements", "").split()
local_requirements = cfg.get("local_requirements", "").split()
sagemaker_requirements = cfg.get("sagemaker_requirements", "").split()
image_requirements = cfg.get("image_requirements", "").split()  # the processing image: core + these
# dev = everything the tests need, so it includes both runtime extras
dev_requirements = local_requirements + sagemaker_requirements + image_requirements + cfg.get("dev_requirements", "").split()
lab_requirements = ["jupyterlab>=4"]

setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    license="Apache-2.0",
    url=cfg["git_url"],
    keywords=cfg["keywords"].split(),
    python_requires=f">={cfg['min_python']}",
    packages=setuptools.find_packages(include=["mlops", "mlops.*"]),
    include_package_data=True,
    # data files the package reads at run time (nbdev_export only rewrites the .py files it generates)
    package_data={"mlops": ["schemas/*.json"]},
    install_requires=requirements,
    extras_require={
        "local": local_requirements,
        "sagemaker": sagemaker_requirements,
        "image": image_requirements,
        "dev": dev_requirements,
        "lab": lab_requirements,
    },
    entry_points={
        "console_scripts": cfg["console_scripts"].split(),
        "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
    },
    zip_safe=False,
)
