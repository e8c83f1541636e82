"""Manufactoria: write a robot-sorting factory in a small DSL (RESD's Manufactoria-Has task).

``ManufactoriaEnv`` scores responses; :mod:`.generator` builds the Manufactoria-Has dataset
(``python -m resd.envs.manufactoria.generator OUT_DIR``); :mod:`.dsl`, :mod:`.interpreter`,
:mod:`.checking` and :mod:`.feedback` are the parser, the robot runner, the pass rule and the
feedback text.
"""

from resd.envs.manufactoria.checking import TapeTest, TestRecord, run_tests
from resd.envs.manufactoria.dsl import ParseError, Program, parse_program
from resd.envs.manufactoria.env import ManufactoriaEnv, extract_code, parse_ground_truth
from resd.envs.manufactoria.feedback import format_feedback
from resd.envs.manufactoria.generator import load_split, write_dataset
from resd.envs.manufactoria.interpreter import MAX_STEPS, ExecutionResult, run_program
from resd.envs.manufactoria.prompt import build_prompt

__all__ = [
    "MAX_STEPS",
    "ExecutionResult",
    "ManufactoriaEnv",
    "ParseError",
    "Program",
    "TapeTest",
    "TestRecord",
    "build_prompt",
    "extract_code",
    "format_feedback",
    "load_split",
    "parse_ground_truth",
    "parse_program",
    "run_program",
    "run_tests",
    "write_dataset",
]
