"""BouncingSim (a task of RESD, arXiv 2605.12741): predict bouncing balls with a Python function.

A scene is a fixed convex regular polygon with 3 (easy) or 4-5 (medium) elastic balls inside.
The model writes ``predict_position(t)``; each of about 15 timestamped asserts compares its
answer with ground truth from the pymunk physics engine (mean distance <= 50 m). Modules:
``scene`` (generator), ``physics`` (ground truth), ``reference`` (an exact solution, also the
independent check), ``prompt``, ``checks`` (asserts and stored formats), ``runner`` (sandboxed
execution), ``feedback`` (the text), ``dataset`` (rows and files), ``env`` (the environment).
Write datasets with ``python -m resd.envs.bouncingsim --help``.
"""

from resd.envs.bouncingsim.dataset import generate_rows, to_verl_row, write_dataset
from resd.envs.bouncingsim.env import BouncingSimEnv
from resd.envs.bouncingsim.scene import Scene, generate_scene

__all__ = ["BouncingSimEnv", "Scene", "generate_rows", "generate_scene", "to_verl_row", "write_dataset"]
