import os

from hypothesis import settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# Property tests run the same examples on every run, so CI passes or fails on the code alone (a
# random draw once failed CI on a test bug earlier runs had not drawn). MEMORAY_HYPOTHESIS_RANDOM=1
# draws fresh examples, to go looking for new failures; Hypothesis prints how to replay one.
settings.register_profile("memoray-fixed", derandomize=True, database=None)
settings.register_profile("memoray-random", derandomize=False, database=None)
settings.load_profile("memoray-random" if os.environ.get("MEMORAY_HYPOTHESIS_RANDOM") == "1"
                      else "memoray-fixed")
