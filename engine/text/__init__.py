"""Text: the tokenizer (encode, decode, chat template), streaming detokenization and stop strings.

- `tokenizer.py`    Tokenizer: a folder's tokenizer.json + tokenizer_config.json (never the network)
- `detokenizer.py`  StreamingDetokenizer: whole characters only, deltas add up to the full decode
- `stop.py`         StopStringMatcher: never emits text that might start a stop string
"""

from tiny_llm_playground.engine.text.detokenizer import REPLACEMENT_CHAR, StreamingDetokenizer, TextDecoder
from tiny_llm_playground.engine.text.stop import StopStringMatcher
from tiny_llm_playground.engine.text.tokenizer import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, Tokenizer, bytes_to_unicode

__all__ = [
    "REPLACEMENT_CHAR",
    "TOKENIZER_CONFIG_FILE",
    "TOKENIZER_FILE",
    "StopStringMatcher",
    "StreamingDetokenizer",
    "TextDecoder",
    "Tokenizer",
    "bytes_to_unicode",
]
