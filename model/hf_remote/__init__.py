"""The transformers remote code every Hugging Face export carries.

`configuration_openelm.py` and `modeling_openelm.py` in this folder are copied as they are into an
export, and `config.json` gets an `auto_map` naming them, so that
`transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` (and lm-eval's
`hf` backend with `trust_remote_code=True`) loads the folder with this project's model, under
transformers 4.4x and 5.x. The two files import only torch, numpy and transformers: transformers
imports them from the export folder, without this package.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = ("configuration_openelm.py", "modeling_openelm.py")
AUTO_MAP = {
    "AutoConfig": "configuration_openelm.OpenELMConfig",
    "AutoModelForCausalLM": "modeling_openelm.OpenELMForCausalLM",
}


def write_remote_code(folder: str | Path) -> Path:
    """Copy the two files into `folder` and add `auto_map` to its config.json; returns the folder."""
    folder = Path(folder)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    for name in FILES:
        shutil.copyfile(HERE / name, folder / name)
    config["auto_map"] = dict(AUTO_MAP)
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return folder
