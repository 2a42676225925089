"""General prompts used as the gate's reference set: their statistics z-score the
hidden keys, and they serve as 'general' negatives for the margin rule.

They now live in the package (memzd.gate.REFERENCE_PROMPTS), minus the one prompt
that was also an anchor ("What is the freezing point of water in Fahrenheit?"), so that the anchors
measure forgetting independently of the gate.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from memzd.gate import REFERENCE_PROMPTS as REF_PROMPTS  # noqa: E402,F401
