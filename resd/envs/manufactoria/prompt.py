"""The student prompt: documentation of the factory DSL followed by the task.

The text is written for this project; it follows the structure of the upstream prompt
(the ``messages`` of Hugging Face ``manufactoria/has_train``): overview, robots and tape,
operations, objective, syntax rules, an example that accepts exactly one red tape, then ``# Task``
and the criteria.
"""

from __future__ import annotations

_OVERVIEW = """\
# Manufactoria Factory Language

You will write a small program in a text language that describes a Manufactoria factory.

## Overview

Manufactoria is a puzzle about sorting robots. Every robot that enters your factory carries a \
tape: a row of coloured symbols. Your factory moves each robot from node to node, reading and \
writing its tape on the way, and in the end either keeps it (accepts it) or throws it out \
(rejects it). Your goal is to build a factory that makes the right decision for every possible \
robot.

## Robots and tape

- A tape is a string of colour letters, read from left to right. The first letter is the front.
- The colours are B (blue) and R (red), plus Y (yellow) and G (green) for the harder puzzles.
- Examples of tapes: `RBB`, `GYRB`, and the empty tape `""`.

## Operations

- **Pull**: a puller looks at the front symbol and, if it is one of the two colours it \
understands, removes it from the tape.
- **Paint**: a painter writes one symbol of its colour at the back (the end) of the tape.
- **Route**: every node sends the robot on to the next node; pullers choose the next node from \
the symbol they saw.
"""

_OBJECTIVE = """\
## Objective

Send every robot to the right place for the task below:
- **Accepted**: the robot reaches the END node.
- **Rejected**: the robot is sent to NONE, or it keeps moving forever (a run is cut off after \
1000 steps and counts as rejected).
"""

_OBJECTIVE_OUTPUT_CHECK = """\
## Objective (output check)

Send every robot to the right place for the task below, with the right tape:
- **Accepted**: the robot reaches the END node and its tape at that moment is what the task asks \
for.
- **Rejected**: the robot is sent to NONE, or it keeps moving forever (a run is cut off after \
1000 steps), or it reaches the END node with a tape that the task does not ask for.
"""

_SYNTAX = """\
## Syntax

A program is a list of nodes. Each node is a declaration line `TYPE id:` followed by its route \
lines, each indented by four spaces (or one tab). Put the whole program in one code block that \
starts with ```manufactoria and ends with ```.

### Node types

**START** is where every robot enters. It must be written `START start:` and has one route:
```manufactoria
START start:
    NEXT <node_id>
```

**END** accepts the robot. It must be written `END end`, with no colon and no routes.

**PULLER_RB** understands red and blue; **PULLER_YG** understands yellow and green:
```manufactoria
PULLER_RB <node_id>:
    [R] <node_id>
    [B] <node_id>
    [EMPTY] <node_id>

PULLER_YG <node_id>:
    [Y] <node_id>
    [G] <node_id>
    [EMPTY] <node_id>
```
- If the front symbol is one of the puller's two colours, that symbol is removed and the robot \
takes the branch of that colour.
- If the tape is empty, the robot takes the [EMPTY] branch.
- If the front symbol is a colour the puller does not understand (for example Y at a \
PULLER_RB), nothing is removed and the robot also takes the [EMPTY] branch.
- Branches may be left out; a missing branch sends the robot to NONE.

**Painters** add one symbol at the back of the tape and then follow their single route:
```manufactoria
PAINTER_RED <node_id>:
    NEXT <node_id>
```
The four painters are PAINTER_RED (R), PAINTER_BLUE (B), PAINTER_YELLOW (Y) and PAINTER_GREEN (G).

### Rules

- Exactly one `START start:` and exactly one `END end`; every other node id is a word of letters, \
digits and underscores, and ids must be unique.
- Every declaration ends with a colon, except END, which must not have one.
- A route target is a declared node id, `end`, or `NONE` (reject). Write `end` in lower case.
- START and every painter have exactly one `NEXT` route. Pullers only use the branches of their \
own colours plus [EMPTY].
- Blank lines are ignored, and so is everything after a `#`, so you can write comments.
"""

# the example section of every prompt (public: the efficacy benchmark checks for copies of its factory)
EXAMPLE_SECTION = """\
## Example

This factory accepts exactly one tape, `R` (a single red symbol), and rejects every other tape:
```manufactoria
START start:
    NEXT first

# the first symbol must be red; anything else goes to NONE
PULLER_RB first:
    [R] rest_rb

# after that the tape must be empty: no red or blue ...
PULLER_RB rest_rb:
    [EMPTY] rest_yg

# ... and no yellow or green either
PULLER_YG rest_yg:
    [EMPTY] end

END end
```
"""

TASK_HEADER = "# Task\nYour task is to design a factory with code with following functionality:"


def build_prompt(criteria: str, *, output_check: bool = False) -> str:
    """The full user message for a task described by ``criteria``.

    ``output_check`` selects the objective used when tests also check the final tape.
    """
    objective = _OBJECTIVE_OUTPUT_CHECK if output_check else _OBJECTIVE
    return "\n".join([_OVERVIEW, objective, _SYNTAX, EXAMPLE_SECTION, TASK_HEADER, "", criteria])
