import dagster as dg
import pytest
from threadpoolctl import threadpool_info

from racedayai_bayes.defs.resources import CpuSlots
from racedayai_bayes.lib import cpu_slots


def _blas_threads() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


def test_a_heavy_step_holds_a_cpu_slot_and_one_blas_thread_until_it_ends(tmp_path):
    before = _blas_threads()
    resource = CpuSlots(slots=1, folder=str(tmp_path))
    context = dg.build_init_resource_context()
    resource.setup_for_execution(context)
    try:
        assert _blas_threads() == {1}
        assert cpu_slots._try(tmp_path / "slot-0.lock") is None  # the only slot is held
    finally:
        resource.teardown_after_execution(context)
    assert _blas_threads() == before
    fd = cpu_slots._try(tmp_path / "slot-0.lock")  # given back
    assert fd is not None
    cpu_slots.Slot(0, fd, 0.0).release()


def test_no_slots_means_no_limit(tmp_path):
    resource = CpuSlots(slots=0, folder=str(tmp_path))
    context = dg.build_init_resource_context()
    resource.setup_for_execution(context)
    resource.teardown_after_execution(context)
    assert not list(tmp_path.iterdir())


def test_a_second_core_only_when_another_slot_is_free_and_given_back(tmp_path):
    resource = CpuSlots(slots=2, folder=str(tmp_path))
    context = dg.build_init_resource_context()
    resource.setup_for_execution(context)  # holds one of the two slots
    try:
        with resource.second_core() as two:
            assert two is True
            assert cpu_slots.try_acquire(tmp_path, 2) is None  # both slots held now
        other = cpu_slots.try_acquire(tmp_path, 2)  # the second was given back
        assert other is not None
        try:
            with resource.second_core() as two:
                assert two is False  # another step holds it: one core, no waiting
        finally:
            other.release()
    finally:
        resource.teardown_after_execution(context)
    with CpuSlots(slots=0, folder=str(tmp_path)).second_core() as two:
        assert two is True  # no limit


def test_waiting_steps_are_ranked_chain_first_then_the_forecast_then_the_rest():
    from racedayai_bayes.defs.resources import step_rank

    order = [("model_frame", None), ("bayesian_predictions", "70.3"), ("bayesian_predictions", "140.6"),
             ("posterior_forecast", "70.3"), ("posterior_forecast", "140.6"),
             ("posterior_seed_asof", "70.3"), ("posterior_seed_profile", "140.6")]
    ranks = [step_rank(step, partition) for step, partition in order]
    assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks) - 1  # model_frame and 70.3's CSV tie
    assert step_rank(None, None) == step_rank("something_new", "70.3")  # unknown steps go last, not first


@pytest.mark.parametrize("asset, hint", [("model_frame", True), ("athlete_seasons", True), ("posterior_forecast", False)])
def test_a_corrupt_stored_frame_says_how_to_build_it_again(tmp_path, asset, hint):
    """A refit of unchanged inputs reuses the stored model frame and season table: when one of
    them is corrupt (a crash of the machine), the error says that --rebuild-inputs builds it
    again; any other stored value is made again by the next refit, and its error says nothing more."""
    from types import SimpleNamespace

    from upath import UPath

    from racedayai_bayes.defs.resources import AtomicPickleIOManager
    from racedayai_bayes.lib.outputs import stored

    path = tmp_path / f"{asset}.pkl"
    path.write_bytes(b"\0" * 5000)
    manager = AtomicPickleIOManager(base_path=UPath(tmp_path))
    context = SimpleNamespace(has_asset_key=True, asset_key=dg.AssetKey(asset))
    with pytest.raises(stored.CorruptStoredValue, match=f"{asset}.pkl.*materialise its asset again") as err:
        manager.load_from_path(context, UPath(path))
    assert ("--rebuild-inputs" in str(err.value)) == hint
