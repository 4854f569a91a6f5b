"""``plcli.distill.plan``: the steps a distillation takes, read from the config alone (no training)."""

import dataclasses

import pytest

from plcli.distill import CTCStart, DistillConfig, Refit, Round, plan


def config(**kw) -> DistillConfig:
    return DistillConfig.from_dict({"data": {"manifests": ["x.jsonl"]}, "teacher": "t", **kw})


def rounds(n, epochs=120, warm_epochs=24, tokens=None, votes=1, warm=True):
    return [Round(folder=f"round{k}", epochs=warm_epochs if warm and k > 1 else epochs, tokens=tokens,
                  vote=votes is None or k <= votes, number=k, warm=warm and k > 1) for k in range(1, n + 1)]


def test_the_default_plan():
    """Ten rounds (the first cold, the rest warm for a fifth of the epochs; only the first takes the
    vote), three CTC starts (two seeds with characters, one with phonemes) and one refit."""
    assert plan(config()) == [
        *rounds(10),
        CTCStart(folder="ctc", epochs=120, tokens="char", vote=True, number=1, seed=0),
        CTCStart(folder="ctc-start2", epochs=120, tokens="char", vote=True, number=2, seed=1000),
        CTCStart(folder="ctc-start3", epochs=120, tokens="phoneme", vote=True, number=3, seed=0),
        Refit(folder="ctc2", epochs=40, tokens=None, vote=True, number=1),
    ]


def test_one_round_without_a_ctc_phase_runs_in_the_run_directory():
    assert plan(config(rounds=1, ctc={"weight": 0.0})) == [
        Round(folder="", epochs=120, tokens=None, vote=True, number=1, warm=False)]
    # the CTC head trained within the round
    assert plan(config(rounds=1, ctc_epochs=0)) == [
        Round(folder="", epochs=120, tokens="char", vote=True, number=1, warm=False)]


def test_without_a_ctc_phase_only_the_last_round_trains_the_ctc_head():
    assert plan(config(rounds=3, ctc_epochs=0)) == [*rounds(2), *rounds(3, tokens="char")[2:]]
    assert plan(config(rounds=3, ctc_epochs=0, ctc_all_rounds=True)) == rounds(3, tokens="char")
    assert plan(config(rounds=3, ctc={"weight": 0.0})) == rounds(3)


def test_starts_refits_and_their_epochs():
    cfg = config(rounds=2, ctc_starts=1, ctc_other_tokens=False, ctc_refits=2, ctc_epochs=30,
                 trainer={"seed": 5, "epochs": 50})
    cfg.ctc.tokens = "phoneme"
    steps = plan(cfg)
    assert steps == [
        *rounds(2, epochs=50, warm_epochs=10),
        CTCStart(folder="ctc", epochs=30, tokens="phoneme", vote=True, number=1, seed=5),
        Refit(folder="ctc2", epochs=10, tokens=None, vote=True, number=1),
        Refit(folder="ctc3", epochs=10, tokens=None, vote=True, number=2),
    ]
    assert [s.what for s in steps[2:]] == ["CTC phase", "CTC refit 1/2", "CTC refit 2/2"]
    assert plan(config(rounds=2, ctc_refits=0))[-1] == CTCStart(
        folder="ctc-start3", epochs=120, tokens="phoneme", vote=True, number=3, seed=0)
    assert plan(config(rounds=2, ctc_refit_epochs=7, warm_epochs=3, warm_start=True))[1].epochs == 3
    assert plan(config(rounds=2, ctc_refit_epochs=7))[-1].epochs == 7


def test_cold_rounds():
    assert plan(config(rounds=3, warm_start=False, ctc={"weight": 0.0})) == rounds(3, warm=False)


@pytest.mark.parametrize(("asr_rounds", "asr_ctc", "votes"), [
    (1, True, [True, False, False, True, True, True, True]),
    (None, True, [True] * 7),
    (0, True, [False] * 3 + [True] * 4),
    (2, False, [True, True, False] + [False] * 4),
    (0, False, [False] * 7),  # the recogniser off
])
def test_which_steps_take_the_vote(asr_rounds, asr_ctc, votes):
    assert [s.vote for s in plan(config(rounds=3, asr_rounds=asr_rounds, asr_ctc=asr_ctc))] == votes


def test_the_step_types():
    steps = plan(config(rounds=2))
    assert [type(s).__name__ for s in steps] == [
        "Round",
        "Round",
        "CTCStart",
        "CTCStart",
        "CTCStart",
        "Refit",
    ]
    assert [s.ctc_only for s in steps] == [False, False, True, True, True, True]
    # a warm round, and every CTC step, starts from its teacher's classifier
    assert [s.from_teacher for s in steps] == [False, True, True, True, True, True]
    with pytest.raises(dataclasses.FrozenInstanceError):
        steps[0].epochs = 1


def test_plan_reads_the_config_and_changes_nothing():
    cfg = config()
    before = cfg.to_dict()
    assert plan(cfg) == plan(cfg)
    assert cfg.to_dict() == before
