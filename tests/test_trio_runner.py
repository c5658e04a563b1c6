"""The suite's one trio runner (tests/support/trio_runner.py), run on small
test files of its own through pytester: async tests run (not skipped), the
wall-clock safety net fails a stuck test and the marker changes it, and
autojump_clock runs a test on a virtual clock whose jumps do not trip the net."""

from __future__ import annotations

import pytest

pytest_plugins = ("pytester",)

CONFTEST = "from tests.support.trio_runner import autojump_clock, pytest_pyfunc_call\n"


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\nmarkers =\n    trio_timeout(seconds): safety net\n")
    return pytester


def test_async_tests_run_under_trio_with_their_fixtures(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import trio

        async def test_writes(tmp_path_factory):
            await trio.sleep(0)
            (tmp_path_factory.getbasetemp() / "ran").write_text(trio.lowlevel.current_task().name)

        async def test_fails():
            await trio.sleep(0)
            assert 1 == 2
        """
    )
    result = suite.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    assert "assert 1 == 2" in result.stdout.str()


def test_a_stuck_test_fails_at_its_marked_safety_net(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest, trio

        async def wait_here():
            await trio.sleep_forever()

        @pytest.mark.trio_timeout(0.5)
        async def test_stuck():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_here)
        """
    )
    result = suite.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    assert "still running after 0.5 s of wall-clock time" in result.stdout.str()
    assert "in wait_here" in result.stdout.str()  # where the stuck task waited


def test_autojump_clock_skips_our_timers_and_keeps_the_wall_clock_net(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest, trio

        @pytest.mark.trio_timeout(5)  # a real hour would fail here
        async def test_virtual_hour(autojump_clock):
            start = trio.current_time()
            await trio.sleep(3600)  # a timer of ours: jumped over, not waited on
            assert trio.current_time() - start >= 3600

        @pytest.mark.trio_timeout(5)
        @pytest.mark.usefixtures("autojump_clock")
        async def test_virtual_hour_through_usefixtures():
            await trio.sleep(3600)
        """
    )
    result = suite.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
