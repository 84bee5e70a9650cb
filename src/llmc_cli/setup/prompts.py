"""How the wizard asks: questionary on a terminal, or unattended (flags, ``--answers``, ``--yes``).

Unattended never reads stdin, so it cannot hang on a closed or piped one: with ``--yes`` a question
takes its recommended default; without it, or with no default to take, it ends in one message
naming the flag that answers it. On a terminal, Ctrl-C at a prompt raises KeyboardInterrupt (exit
130, nothing written: the wizard writes only after the last answer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmc_cli.errors import ConfigError


@dataclass(frozen=True)
class Choice:
    value: Any
    label: str
    disabled: str | None = None  # why it cannot be picked


@dataclass
class Prompter:
    """Counts the questions asked (the closing figure: prompts with defaults accepted)."""

    asked: list[str] = field(default_factory=list)

    def text(self, question: str, default: str | None, flag: str, path: bool = False, validate=None) -> str:
        """``validate(answer)`` returns True or what is wrong (asked again on a terminal)."""
        raise NotImplementedError

    def select(self, question: str, choices: list[Choice], default: Any, flag: str) -> Any:
        raise NotImplementedError

    def checkbox(self, question: str, choices: list[Choice], default: list[Any], flag: str) -> list[Any]:
        raise NotImplementedError

    def confirm(self, question: str, default: bool, flag: str) -> bool:
        raise NotImplementedError


class Unattended(Prompter):
    """No terminal: the default when ``--yes`` accepts recommendations, else an error naming the flag."""

    def __init__(self, accept: bool) -> None:
        super().__init__()
        self.accept = accept

    def _default(self, question: str, default: Any, flag: str) -> Any:
        if self.accept and default is not None:
            return default
        why = "it has no default" if self.accept else "there is no terminal to ask on"
        raise ConfigError(
            f'llmc setup needs an answer to "{question}" and {why}.',
            hint=f"Pass {flag}" + ("" if self.accept else " (or --yes to accept every recommendation)") + ".",
        )

    def text(self, question, default, flag, path=False, validate=None):
        return self._default(question, default, flag)

    def select(self, question, choices, default, flag):
        return self._default(question, default, flag)

    def checkbox(self, question, choices, default, flag):
        return self._default(question, default, flag)

    def confirm(self, question, default, flag):
        return self._default(question, default, flag)


class Interactive(Prompter):
    """questionary prompts; ``unsafe_ask`` so Ctrl-C raises instead of returning None."""

    def text(self, question, default, flag, path=False, validate=None):
        import questionary

        self.asked.append(question)
        ask = questionary.path if path else questionary.text

        def check(answer: str):
            if not answer.strip():
                return "An answer is needed."
            return validate(answer.strip()) if validate is not None else True

        return ask(question, default=default or "", validate=check).unsafe_ask().strip()

    def select(self, question, choices, default, flag):
        import questionary

        self.asked.append(question)
        options = [questionary.Choice(c.label, value=c.value, disabled=c.disabled) for c in choices]
        picked = next((o for o in options if o.value == default and not o.disabled), None)
        return questionary.select(question, choices=options, default=picked).unsafe_ask()

    def checkbox(self, question, choices, default, flag):
        import questionary

        self.asked.append(question)
        options = [
            questionary.Choice(
                c.label, value=c.value, disabled=c.disabled, checked=c.value in default and not c.disabled
            )
            for c in choices
        ]
        return list(questionary.checkbox(question, choices=options).unsafe_ask())

    def confirm(self, question, default, flag):
        import questionary

        self.asked.append(question)
        return bool(questionary.confirm(question, default=default).unsafe_ask())


def whole_number(answer: str) -> bool | str:
    """A text prompt's check: True for a whole number of at least 1, else what is wrong."""
    return True if answer.isdigit() and int(answer) >= 1 else "A whole number of at least 1, please."
