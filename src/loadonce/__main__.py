"""``python -m loadonce`` and the ``loadonce`` command. The command's modules are imported
once the stop signals' handlers are in place (``server/early_stop.py``): importing them takes
a while, and a SIGTERM meanwhile ended the process with status 143, nothing logged."""

from loadonce.server.early_stop import run_command


def main() -> None:
    def command() -> None:
        from loadonce.server.cli import main as loadonce_command

        loadonce_command()

    run_command(command)


if __name__ == "__main__":
    main()
