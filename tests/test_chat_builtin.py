"""vintagelm/chat/builtin.py: the conversation set made from the builtin plays."""
import re

from vintagelm.chat import builtin
from vintagelm.chat.format import Message

PLAY = """# The Test of Errors

## ACT I

### SCENE I. A street.

_Enter ANNA and BEN_

**ANNA**  
Good morrow, Ben; what news upon the street?  
I heard a bell.

**BEN**  
The bell was rung for thee, and none but thee.

_Exit ANNA_

**BEN**  
Ay.

### SCENE II. A room.

**CARA**  
A second scene begins with me, and speaks alone at length.
"""


def test_a_play_becomes_scenes_of_speeches_without_stage_directions():
    title, scenes = builtin.scenes(PLAY)
    assert title == "The Test of Errors"
    assert scenes == [
        [("Anna", "Good morrow, Ben; what news upon the street? I heard a bell."),
         ("Ben", "The bell was rung for thee, and none but thee."), ("Ben", "Ay.")],
        [("Cara", "A second scene begins with me, and speaks alone at length.")],
    ]
    conversations = [c for s in scenes for c in builtin.exchanges(title, s)]
    # Ben answering himself is no exchange; a scene of one speech has none
    assert conversations == [[
        Message("system", "You are Ben in The Test of Errors."),
        Message("user", "Good morrow, Ben; what news upon the street? I heard a bell."),
        Message("assistant", "The bell was rung for thee, and none but thee."),
    ]]


def test_the_builtin_set_holds_whole_plays_out_and_keeps_its_rules():
    split = builtin.builtin_conversations()
    assert len(split["train"]) > 10000 and len(split["val"]) > 1000
    plays = {part: {re.search(r" in (.+)\.$", c[0].content).group(1) for c in convs}
             for part, convs in split.items()}
    assert plays["train"].isdisjoint(plays["val"])  # no validation scene is ever trained on
    seen = set()
    for conversation in split["train"] + split["val"]:
        system, user, assistant = conversation
        assert (system.role, user.role, assistant.role) == ("system", "user", "assistant")
        speaker = re.match(r"You are (.+?) in ", system.content).group(1)
        assert speaker and all(builtin.MIN_CHARS <= len(t) <= builtin.MAX_CHARS for t in (user.content, assistant.content))
        assert "**" not in user.content + assistant.content and "_" not in assistant.content
        key = (user.content, assistant.content)
        assert key not in seen
        seen.add(key)
    assert builtin.builtin_conversations() == split  # the same set every time
