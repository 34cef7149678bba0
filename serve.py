"""Start the app warm: import the engine, load the default model and start the evaluation service
(workers and the default accuracy curve), then hand over to ``streamlit run app.py`` in this process,
so the server answers its health check with everything the first page needs already in memory.

    python serve.py [streamlit run options, e.g. --server.port 8502]
"""

import sys


def main() -> int:
    from streamlit.web import cli  # noqa: PLC0415

    import glue  # noqa: PLC0415 - imported here: spawned workers re-import this file and must stay light

    glue.warm()
    limit = f"--server.maxUploadSize={glue.checkpoints.max_upload_mb()}"  # Streamlit refuses larger files first
    sys.argv = ["streamlit", "run", "app.py", limit, *sys.argv[1:]]
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
