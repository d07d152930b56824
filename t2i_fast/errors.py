"""User errors: problems the person running a command can fix (arguments, config values, data,
weight files, the file system, a run directory owned by another run). The library raises them
as typed exceptions; each command's entry point runs through `cli_main`, which prints a user
error as one line and exits with code 2, while any other exception is a bug and keeps its
traceback.

    raise ConfigError("--steps must be an integer, got '2.5'")
    if __name__ == "__main__":
        sys.exit(cli_main(main))          # main(argv) -> exit code

Most classes also derive from the builtin their callers caught before (ValueError, OSError,
...), so `except ValueError` around a config still works. WeightsError derives from no builtin:
code that loads a state dict catches RuntimeError and KeyError for shapes that do not fit, and
must not catch a missing or unreadable file as such.
"""
import argparse
import sys

from t2i_fast import backends


class UserError(Exception):
    """A problem with the command line, the input files or the environment, not a bug."""


class ConfigError(UserError, ValueError):
    """A flag, a config value or a stored run config that is invalid."""


class DataError(UserError, ValueError):
    """Dataset files that are corrupt, refused or inconsistent."""


class DataNotFound(UserError, FileNotFoundError):
    """A dataset folder or file that does not exist."""


class WeightsError(UserError):
    """A checkpoint or weight file that is missing, unreadable or does not fit the model."""


class FileSystemError(UserError, OSError):
    """A file or folder that cannot be created or written (permissions, read-only or full)."""


class RunDirError(UserError):
    """A run directory that holds another run or is in use by a live process."""


# The backend registry's own errors are user errors too: an unknown backend name (flag or
# T2I_FAST_BACKEND) and a backend that cannot run on this machine.
USER_ERRORS = (UserError, backends.UnknownBackend, backends.BackendUnavailable)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors raise ConfigError, so they print as one line like the rest
    (argparse itself prints the usage and exits)."""

    def error(self, message):
        raise ConfigError(f"{message} (see {self.prog} --help)")


def one_line(err):
    """The message of `err` on one line."""
    lines = str(err).strip().splitlines()
    # A DataLoader worker's error is re-raised with the worker's traceback as its message:
    # "Caught X in DataLoader worker process 0.", the traceback, then "X: message".
    if len(lines) > 1 and lines[0].startswith("Caught ") and "DataLoader worker" in lines[0]:
        lines = [lines[-1].split(": ", 1)[-1]]
    return " ".join(" ".join(lines).split()) or type(err).__name__


def cli_main(main, argv=None):
    """Run `main(argv)`; a user error becomes `error: <message>` on stderr and exit code 2."""
    try:
        code = main(argv)
    except USER_ERRORS as e:
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the writes are atomic, so nothing is half-written
        print("interrupted", file=sys.stderr, flush=True)
        return 130
    return 0 if code is None else code
