"""The one exception type a user sees: a one-line message and exit code 2 from the CLI."""


class EdgegenError(Exception):
    """Bad input or an unusable environment, described in one line for the user."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first meaningful line of a toolchain's error, for wrapping into an EdgegenError."""
    text = str(error).strip() or type(error).__name__
    line = next((part.strip() for part in text.splitlines() if part.strip()), text)
    return line if len(line) <= limit else line[: limit - 3] + "..."
