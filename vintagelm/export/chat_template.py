"""Our chat frame (chat/format.py) as the Jinja template that exported files carry.

transformers' apply_chat_template, llama.cpp and llama-cpp-python render a conversation with
it; with add_generation_prompt it ends where our own chat prompt ends, at <|assistant|>:
    <|endoftext|><|system|>Be brief.<|end|><|user|>Good morrow.<|end|><|assistant|>
The special tokens are written as text, not as bos_token: every renderer then gives the same
string, which each client tokenizes with its specials recognised.
"""
from vintagelm.chat.format import END, ROLE_TOKENS
from vintagelm.tokenizers.base import EOT


def chat_template():
    """The Jinja source: each message as its role token, its content and <|end|>."""
    roles = "{" + ", ".join(f"'{role}': '{token}'" for role, token in ROLE_TOKENS.items()) + "}"
    return (
        f"{{%- set role_tokens = {roles} -%}}"
        f"{EOT}"
        "{%- for message in messages -%}"
        f"{{{{ role_tokens[message['role']] + message['content'] + '{END}' }}}}"
        "{%- endfor -%}"
        f"{{%- if add_generation_prompt -%}}{ROLE_TOKENS['assistant']}{{%- endif -%}}"
    )
