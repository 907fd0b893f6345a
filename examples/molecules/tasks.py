"""
Molecule-design tasks with a binary success, as reward functions in TRL's contract (`completions -> list[float]`).

A completion is a SMILES string; one RDKit cannot parse scores 0. The cuts are calibrated so that the prior built by
`prior.py` succeeds about 1e-4 to 1e-3 of the time (`python examples/molecules/tasks.py` measures it):

- `diazepam_analog`: a molecule near a known drug. Morgan fingerprint (radius 2, 2048 bits) Tanimoto similarity to
  diazepam at least `DIAZEPAM_SIMILARITY`, drug-like (QED >= 0.75) and easy to make (SA score <= 3).
- `fluorinated_cns_lead`: properties alone. An aromatic C-F, QED >= `CNS_MIN_QED`, Crippen logP in [2, 3.5], TPSA in
  [40, 70] A^2 (the range of CNS-penetrant drugs) and SA score <= 2.5.
"""

import argparse
import json
import os
import sys
import time

from rdkit import Chem, DataStructs, RDLogger
from rdkit.Chem import QED, Crippen, rdFingerprintGenerator, rdMolDescriptors
from rdkit.Contrib.SA_Score import sascorer


RDLogger.DisableLog("rdApp.*")

DIAZEPAM = "CN1C(=O)CN=C(c2ccccc2)c2cc(Cl)ccc21"
# Calibrated on 100,000 samples of the prior (`python examples/molecules/tasks.py`, seed 12345): about 30 samples
# reach each cut, with the task's other conditions (docs/results/molecules.md).
DIAZEPAM_SIMILARITY = 0.27
CNS_MIN_QED = 0.945
AROMATIC_FLUORINE = Chem.MolFromSmarts("c[F]")

_MORGAN = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
_DIAZEPAM_FINGERPRINT = _MORGAN.GetFingerprint(Chem.MolFromSmiles(DIAZEPAM))


def parse(smiles: str):
    """The RDKit molecule of a completion, or None when it is not a valid SMILES (empty text included)."""
    smiles = smiles.strip()
    return Chem.MolFromSmiles(smiles) if smiles else None


def diazepam_similarity(molecule) -> float:
    return DataStructs.TanimotoSimilarity(_MORGAN.GetFingerprint(molecule), _DIAZEPAM_FINGERPRINT)


def properties(molecule) -> dict:
    """The descriptors the tasks cut on, for reports."""
    return {
        "similarity": diazepam_similarity(molecule),
        "qed": QED.qed(molecule),
        "logp": Crippen.MolLogP(molecule),
        "tpsa": rdMolDescriptors.CalcTPSA(molecule),
        "sa": sascorer.calculateScore(molecule),
        "aromatic_fluorine": molecule.HasSubstructMatch(AROMATIC_FLUORINE),
    }


def is_diazepam_analog(molecule) -> bool:
    # Cheapest test first: most samples fail on similarity, and the SA score is the slowest descriptor.
    return (
        diazepam_similarity(molecule) >= DIAZEPAM_SIMILARITY
        and QED.qed(molecule) >= 0.75
        and sascorer.calculateScore(molecule) <= 3.0
    )


def is_fluorinated_cns_lead(molecule) -> bool:
    return (
        molecule.HasSubstructMatch(AROMATIC_FLUORINE)
        and 40 <= rdMolDescriptors.CalcTPSA(molecule) <= 70
        and 2 <= Crippen.MolLogP(molecule) <= 3.5
        and QED.qed(molecule) >= CNS_MIN_QED
        and sascorer.calculateScore(molecule) <= 2.5
    )


class MoleculeReward:
    """
    A binary task reward in TRL's contract: 1.0 for a valid SMILES whose molecule passes `check`, else 0.0. Extra
    keyword arguments (`prompts`, dataset columns) are ignored.

    Args:
        name (`str`): the reward's `__name__` (TRL logs rewards under it).
        check (`Callable[[rdkit.Chem.Mol], bool]`): the success criterion on a parsed molecule.
    """

    def __init__(self, name: str, check):
        self.__name__ = name
        self.check = check

    def __call__(self, completions: list[str], **kwargs) -> list[float]:
        rewards = []
        for completion in completions:
            molecule = parse(completion)
            rewards.append(float(molecule is not None and self.check(molecule)))
        return rewards


TASKS = {
    "diazepam_analog": MoleculeReward("diazepam_analog", is_diazepam_analog),
    "fluorinated_cns_lead": MoleculeReward("fluorinated_cns_lead", is_fluorinated_cns_lead),
}


def calibrate(samples: list[str]) -> dict:
    """Each task's success rate on `samples`, and the quantiles of the cut descriptor among the samples that pass
    every other condition of its task (to place the cut at a wanted rate)."""
    molecules = [m for m in map(parse, samples) if m is not None]
    report = {"samples": len(samples), "valid": len(molecules)}
    for name, reward in TASKS.items():
        successes = sum(reward(completions=samples))
        report[name] = {"successes": successes, "success_rate": successes / len(samples)}
    analogs = sorted(
        diazepam_similarity(m) for m in molecules if QED.qed(m) >= 0.75 and sascorer.calculateScore(m) <= 3.0
    )
    leads = sorted(
        QED.qed(m)
        for m in molecules
        if m.HasSubstructMatch(AROMATIC_FLUORINE)
        and 40 <= rdMolDescriptors.CalcTPSA(m) <= 70
        and 2 <= Crippen.MolLogP(m) <= 3.5
        and sascorer.calculateScore(m) <= 2.5
    )
    for name, values in (("diazepam_analog", analogs), ("fluorinated_cns_lead", leads)):
        # The cut leaving k samples out of len(samples) above it: the rate that cut gives is k / len(samples).
        report[name]["cut_for_rate"] = {
            f"{k / len(samples):.0e}": values[-k] for k in (10, 30, 100) if len(values) >= k
        }
    return report


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Measure each task's success rate on fresh samples of the prior.")
    parser.add_argument("--prior", default=None, help="the prior's folder (default: the cached one of prior.py)")
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def main(argv=None):
    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from prior import DEFAULT_PRIOR_PATH, load_prior, sample_smiles

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    model, tokenizer = load_prior(args.prior or DEFAULT_PRIOR_PATH)
    samples = sample_smiles(model, tokenizer, args.samples, seed=args.seed)
    report = {**calibrate(samples), "seed": args.seed, "seconds": time.time() - start}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
