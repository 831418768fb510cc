"""Structure names -> nnU-Net labels, from a YAML map (label -> aliases or regular expressions).

YAML format (see default_structure_map.yaml, the map shipped for common radiotherapy names):

    labels:                  # label values 1, 2, ... in this order (background is 0)
      GTVp: [GTVp, GTV_P, "re:^gtv[ _-]*(p|prim|primary|t)$"]
      Brainstem: {value: 2, aliases: [BrainStem, "re:^brain[ _-]?stem"]}   # explicit value, optional
    priority: [GTVp, GTVn, ...]   # optional; overlap winner first (default: the order of `labels`)

Plain aliases match case-insensitively after removing spaces, '_' and '-'; "re:" entries are
Python regular expressions matched case-insensitively against the whole original name.
"""
from __future__ import annotations

import os
import re
from typing import Dict, List, Optional

import yaml

from nnunet_prompt_datasets.conversion_errors import ConversionError

DEFAULT_MAP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default_structure_map.yaml")


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).casefold()


class StructureMap:
    def __init__(self, labels: Dict[str, int], aliases: Dict[str, List[str]], priority: List[str], source: str):
        self.labels, self.aliases, self.priority, self.source = labels, aliases, priority, source
        self._plain = {label: {_normalise(a) for a in al if not a.startswith("re:")} | {_normalise(label)}
                       for label, al in aliases.items()}
        self._regex = {label: [re.compile(a[3:], re.IGNORECASE) for a in al if a.startswith("re:")]
                       for label, al in aliases.items()}

    @property
    def names(self) -> List[str]:
        """Label names in label-value order."""
        return sorted(self.labels, key=self.labels.get)

    def match(self, structure_name: str) -> Optional[str]:
        """The label a structure name belongs to, or None. A name matching two labels is an error in the map."""
        hits = [label for label in self.names if _normalise(structure_name) in self._plain[label]
                or any(r.fullmatch(structure_name.strip()) for r in self._regex[label])]
        if len(hits) > 1:
            raise ConversionError(f"structure name '{structure_name}' matches several labels {hits} of the map.",
                                  file=self.source, fix="make the aliases of these labels disjoint.")
        return hits[0] if hits else None

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> "StructureMap":
        if not isinstance(data, dict) or not isinstance(data.get("labels"), dict) or not data["labels"]:
            raise ConversionError("a structure map needs a non-empty 'labels' mapping (label -> aliases).",
                                  file=source, fix="see nnunet_prompt_datasets/default_structure_map.yaml.")
        labels, aliases = {}, {}
        for position, (label, entry) in enumerate(data["labels"].items(), start=1):
            if isinstance(entry, dict):
                value = entry.get("value", position)
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ConversionError(f"label '{label}' has 'value' {value!r}; a label value is a whole number.",
                                          file=source, fix="write e.g. 'value: 2', or drop it to number labels by "
                                                           "their order.")
                labels[label] = value
                raw_aliases = entry.get("aliases", [])
            else:
                labels[label] = position
                raw_aliases = entry or []
            if not isinstance(raw_aliases, list):
                raise ConversionError(f"label '{label}' needs a list of aliases, got {raw_aliases!r}.", file=source,
                                      fix="write e.g. 'GTVp: [GTVp, GTV_P]'.")
            aliases[label] = [str(a) for a in raw_aliases]
            for a in aliases[label]:
                if a.startswith("re:"):
                    try:
                        re.compile(a[3:])
                    except re.error as e:
                        raise ConversionError(f"alias '{a}' of label '{label}' is not a valid regular expression "
                                              f"({e}).", file=source, fix="correct the pattern after 're:' (Python "
                                                                          "regular expression syntax).") from None
        values = sorted(labels.values())
        if values != list(range(1, len(values) + 1)):
            raise ConversionError(f"label values {dict(sorted(labels.items(), key=lambda kv: kv[1]))} would not be "
                                  f"consecutive (nnU-Net needs 1, 2, ..., {len(values)}).", file=source,
                                  fix="renumber the 'value' entries or drop them to number labels by their order.")
        priority = list(data.get("priority") or sorted(labels, key=labels.get))
        unknown = [p for p in priority if p not in labels]
        if unknown or set(priority) != set(labels):
            raise ConversionError(f"'priority' must list every label exactly once (unknown: {unknown}, missing: "
                                  f"{sorted(set(labels) - set(priority))}).", file=source,
                                  fix="list all labels in 'priority', winner first.")
        return cls(labels, aliases, priority, source)

    @classmethod
    def load(cls, path: Optional[str] = None) -> "StructureMap":
        path = path or DEFAULT_MAP
        if not os.path.isfile(path):
            raise ConversionError("structure map not found.", file=path, fix="pass an existing YAML file to --structure-map.")
        with open(path, "r", encoding="utf-8") as f:
            try:
                data = yaml.safe_load(f)
            except yaml.YAMLError as e:
                raise ConversionError(f"structure map is not valid YAML ({e}).", file=path, fix="correct the YAML.") from None
        return cls.from_dict(data, path)


def identity_map(names, source: str) -> StructureMap:
    """A map that keeps a dataset's own structure names (public datasets): tumour volumes (GTV*, CTV*) first, so they
    win overlaps, then the rest alphabetically; label values follow that order."""
    ordered = sorted(set(names), key=lambda n: (not n.upper().startswith("GTV"), not n.upper().startswith("CTV"), n.casefold()))
    return StructureMap({n: i for i, n in enumerate(ordered, start=1)}, {n: [] for n in ordered}, ordered, source)
