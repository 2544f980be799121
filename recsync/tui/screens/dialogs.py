"""Small modal screens: a yes/no confirmation and the help."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Markdown

HELP = """\
# recsync dashboard

| Key | Where | Does |
|---|---|---|
| `o` | anywhere | back to the overview (closes dialogs; not while typing in a field) |
| `f` | anywhere | failed records |
| `r` | anywhere | rule sets and the last reload |
| `s` | anywhere | live settings of a pipeline |
| `?` | anywhere | this help |
| `q` | anywhere | quit |
| `enter` | overview | open the pipeline's detail |
| `enter` | failed | open the record (error and history) |
| `t` / `T` | failed | retry the record / all shown (asks first) |
| `l` | rules | reload the configuration from disk |
| `p` | overview, detail | pause the pipeline, or resume it when paused |
| `n` | overview, detail | sync the pipeline now |
| `escape` | detail, dialogs | back |

Everything can be clicked with the mouse too. The header shows the daemon's endpoint and
whether the dashboard is connected; it reconnects by itself after a daemon restart.
"""


# a modal screen hides the app's bindings: each dialog repeats `o` itself
TO_OVERVIEW = Binding("o", "app.overview", "Overview")


class ConfirmScreen(ModalScreen[bool]):
    BINDINGS = [Binding("escape", "no", "Cancel"), Binding("y", "yes", "Yes"), TO_OVERVIEW]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm", classes="dialog"):
            yield Label(self.question, id="confirm-question")
            with Horizontal(classes="buttons"):
                yield Button("Yes", variant="warning", id="yes")
                yield Button("No", variant="primary", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_yes(self) -> None:
        self.dismiss(True)

    def action_no(self) -> None:
        self.dismiss(False)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "close", "Close"), TO_OVERVIEW]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help", classes="dialog"):
            yield Markdown(HELP)
            yield Button("Close", id="help-close")

    def on_button_pressed(self, _event: Button.Pressed) -> None:
        self.dismiss()

    def action_close(self) -> None:
        self.dismiss()
