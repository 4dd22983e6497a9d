"""`abliterate chat MODEL [--trial RUN_DIR:N]`: talk to a model in the terminal."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from abliterate.cli.console import err
from abliterate.config import load_settings
from abliterate.errors import AbliterateError

if TYPE_CHECKING:  # loaded by the commands that run, not for --help (torch)
    from abliterate.search.record import TrialRecord

HELP = "commands: /reset (forget the conversation), /quit (leave)"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("chat", help="talk to a model: base, exported, or a trial on the fly")
    parser.add_argument(
        "model", nargs="?", help="model directory or id (default with --trial: the run's model)"
    )
    parser.add_argument(
        "--trial", metavar="RUN_DIR:N", help="apply trial N of a run to the model before chatting"
    )
    parser.add_argument("--system-prompt", help="system prompt for the conversation")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--chat-template", help="Jinja chat template file, if the model has none")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from abliterate.chat import Conversation
    from abliterate.model import loading
    from abliterate.stages.session import open_session

    if args.trial:
        run_path, _, number = args.trial.rpartition(":")
        if not run_path or not number.isdigit():
            raise AbliterateError(f"--trial {args.trial!r}: expected RUN_DIR:N")
        settings = load_settings(Path(run_path) / "settings.toml")
        if args.model:
            settings = settings.model_copy(update={"model": args.model})
        session = open_session(settings, for_search=False)
        record = session.run_dir.load_trial(int(number))
        chat_with_trial(session, record, args.system_prompt, args.max_new_tokens)
        return 0
    if not args.model:
        raise AbliterateError("give a MODEL, or --trial RUN_DIR:N")
    loaded = loading.load(
        args.model,
        chat_template=args.chat_template,
        trust_remote_code=args.trust_remote_code,
        dtypes=["auto", "bfloat16", "float32"],
    )
    repl(
        Conversation(loaded.model, loaded.tokenizer, args.system_prompt, args.max_new_tokens),
        f"{args.model}",
    )
    return 0


def chat_with_trial(
    session, record: TrialRecord, system_prompt: str | None = None, max_new_tokens: int = 256
) -> None:
    """Chat with trial `record` applied to the session's model; the model is restored after."""
    from abliterate.chat import Conversation
    from abliterate.edit.plan import plan

    edits = plan(session.layout.writers, session.directions, record.params)
    with session.editor.applied(edits):
        repl(
            Conversation(session.model, session.tokenizer, system_prompt, max_new_tokens),
            f"{session.settings.model} + trial {record.number}",
        )


def repl(conversation, name: str) -> None:
    err.print(f"chatting with [bold]{name}[/bold]; {HELP}")
    while True:
        try:
            text = input("you> ")
        except EOFError:
            print()
            return
        text = text.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return
        if text == "/reset":
            conversation.reset()
            print("(conversation reset)")
            continue
        if text.startswith("/"):
            print(HELP)
            continue
        sys.stdout.write("model> ")
        for piece in conversation.reply(text):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
