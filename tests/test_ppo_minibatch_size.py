"""A PPO minibatch of one sample is refused at config time (issue 28, item 8.2).

Per-minibatch advantage normalisation divides by the advantages' std, which torch computes
unbiased: NaN for one sample, and every loss after it NaN. Each torchrun process steps its
own ppo.num_envs environments, so the minibatch checked is also each process's.
"""

from __future__ import annotations

import pytest

from agents.ppo import PPOConfig
from tests.test_ppo_reliability import TINY, assert_one_line_error, run_cli
from training.ranges import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _no_traceback(monkeypatch):
    monkeypatch.delenv("RLENC_TRACEBACK", raising=False)


def test_a_minibatch_of_one_is_a_one_line_error_before_the_run_dir(tmp_path, capsys):
    out = tmp_path / "run"
    # TINY: 2 envs x 4 steps = 8 transitions, in 8 minibatches of 1.
    code, message = run_cli([*TINY, "--ppo.num_minibatches=8", f"--output_dir={out}"], capsys)
    assert_one_line_error(code, message, "ppo.num_envs * ppo.num_steps / ppo.num_minibatches "
                                         "= 2 * 4 / 8 leaves a minibatch of 1 sample")
    assert "--ppo.num_minibatches" in message and "normalised" in message
    assert not out.exists()


def test_the_smallest_minibatch_counts_a_remainder():
    with pytest.raises(ConfigError, match="leaves a minibatch of 1 sample"):
        PPOConfig(num_envs=5, num_steps=1, num_minibatches=2)  # minibatches of 2, 2 and 1
    with pytest.raises(ConfigError, match="leaves a minibatch of 1 sample"):
        PPOConfig(num_envs=1, num_steps=1, num_minibatches=1)


def test_two_samples_or_no_normalisation_are_accepted():
    assert PPOConfig(num_envs=2, num_steps=4, num_minibatches=4).smallest_minibatch == 2
    assert PPOConfig(num_envs=2, num_steps=4, num_minibatches=8,
                     norm_adv=False).smallest_minibatch == 1
