"""A trial: a task trained with one seed at one point of its grid (:mod:`.grid`), and its record in
``<task>.json``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Trial:
    """One fine-tuning trial. ``best`` and ``last``: dev evaluations (``step``, the task's scores, ``train_loss``;
    the best one also its ``selection_score`` and ``predictions``), None for a trial whose loss ``diverged`` (the
    error). ``recipe``: its grid point; ``nothing_learned``: why it learned nothing, or None. ``state``: the best
    evaluation's weights (``export=true``, rank 0), never recorded."""

    seed: int
    best: dict | None = None
    last: dict | None = None
    final_train_loss: float | None = None  # over its last steps
    steps: int | None = None
    train_examples: int | None = None
    num_labels: int | None = None
    problem: str | None = None
    recipe: dict | None = None
    nothing_learned: str | None = None
    diverged: str | None = None
    state: dict | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        """The trial's record, as ``<task>.json`` and ``results.json`` hold it."""
        if self.diverged is not None:
            return {"seed": self.seed, "recipe": self.recipe, "best": None, "last": None, "diverged": self.diverged,
                    "nothing_learned": self.nothing_learned}
        return {"seed": self.seed, "best": self.best, "last": self.last, "final_train_loss": self.final_train_loss,
                "steps": self.steps, "train_examples": self.train_examples, "num_labels": self.num_labels,
                "problem": self.problem, "recipe": self.recipe, "nothing_learned": self.nothing_learned}
