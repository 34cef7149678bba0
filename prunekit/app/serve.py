"""Start the app warm: import the engine, load the default model and start the evaluation service
(workers and the default accuracy curve), then hand over to ``streamlit run main.py`` in this process,
so the server answers its health check with everything the first page needs already in memory.

    python -m prunekit.app.serve [streamlit run options, e.g. --server.port 8502]
"""

import sys
from pathlib import Path


def main(streamlit_args: list[str] | None = None) -> int:
    """Warm up, then run ``streamlit run main.py`` with ``streamlit_args`` (default: this command's own)."""
    from streamlit.web import cli  # noqa: PLC0415

    from prunekit.app import server_state  # noqa: PLC0415 - imported here: spawned workers re-import this file and must stay light
    from prunekit.models import checkpoints  # noqa: PLC0415 - imported here: spawned workers re-import this file and must stay light

    server_state.warm()
    limit = f"--server.maxUploadSize={checkpoints.max_upload_mb()}"  # Streamlit refuses larger files first
    sys.argv = [
        "streamlit",
        "run",
        str(Path(__file__).with_name("main.py")),
        limit,
        *(sys.argv[1:] if streamlit_args is None else streamlit_args),
    ]
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
