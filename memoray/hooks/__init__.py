"""Claude Code hooks: `memoray hook <Event>` captures what the agent did and feeds memories back.

Everything under this package runs inside a hook process that Claude Code waits on, so it imports
only the standard library and never lets a failure reach the agent (exit 0, errors on stderr).
"""

HOOK_EVENTS = (
    "SessionStart", "UserPromptSubmit", "PostToolUse", "PostToolUseFailure", "Stop",
    "SessionEnd", "PreCompact", "PostCompact",
)
