"""The shipped radiotherapy structure map and the map file rules."""
import subprocess

import pytest

from conftest import console_script
from nnunet_prompt_datasets.conversion_errors import ConversionError
from nnunet_prompt_datasets.structure_map import StructureMap


@pytest.mark.parametrize("name,label", [
    ("GTVp", "GTVp"), ("GTV_P", "GTVp"), ("gtv primary", "GTVp"), ("GTV-T", "GTVp"), ("GTVp2", "GTVp"),
    ("GTVn", "GTVn"), ("GTV_LN", "GTVn"), ("GTVnd", "GTVn"), ("gtv node 2", "GTVn"),
    ("CTV", "CTV"), ("CTV_High", "CTV"), ("BrainStem", "Brainstem"), ("Brain Stem PRV", "Brainstem"),
    ("Spinal_Cord", "SpinalCord"), ("Cord", "SpinalCord"), ("Parotid Lt", "Parotid_L"), ("Lt_Parotid", "Parotid_L"),
    ("parotid_r", "Parotid_R"), ("Glnd_Submand_L", "Submandibular_L"), ("Optic Nerve R", "OpticNerve_R"),
    ("Chiasm", "OpticChiasm"), ("Cochlea_Lt", "Cochlea_L"), ("Eye_R", "Eye_R"), ("Oesophagus", "Esophagus"),
    ("BODY", None), ("External", None), ("PTV70", None), ("Parotids", None),
])
def test_default_map_knows_common_radiotherapy_names(name, label):
    assert StructureMap.load().match(name) == label


def test_map_rules():
    smap = StructureMap.from_dict({"labels": {"A": ["re:^x.*"], "B": ["xy"]}})
    with pytest.raises(ConversionError, match="matches several labels"):
        smap.match("xy")
    with pytest.raises(ConversionError, match="priority"):
        StructureMap.from_dict({"labels": {"A": [], "B": []}, "priority": ["A"]})
    assert StructureMap.from_dict({"labels": {"A": [], "B": []}, "priority": ["B", "A"]}).priority == ["B", "A"]


def test_cli_help_explains_every_layout():
    out = subprocess.run([console_script("nnunet-prompt"), "convert", "--help"], capture_output=True, text=True).stdout
    for needle in ("dicom-rt:", "RTSTRUCT", "segrap2023:", "image_contrast.nii.gz", "hanseg:", "_IMG_MR_T1.nrrd",
                   "hecktor:", "__PT.nii.gz", "totalseg:", "segmentations/", "msd:", "folder:", "--overlap",
                   "--rgb-fusion", "--resample-oblique", "--clinical", "--strict", "-np"):
        assert needle in out, needle
