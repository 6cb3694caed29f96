"""`make app`: the interactive CustomNet page on http://127.0.0.1:7860 (local only; see customnet_jax/app/ui.py).

    python app.py [--model FOLDER] [--host 127.0.0.1] [--port 7860]
"""

import argparse
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: nothing leaves the machine


def main(argv=None) -> int:
    from customnet_jax.app import session, ui

    parser = argparse.ArgumentParser(prog="app.py", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(session.DEMO_FOLDER), help="model folder (default: the built-in "
                                                                           "demo model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args(argv)
    try:
        page = ui.build(args.model)
    except (ValueError, OSError) as error:
        print(f"app.py: error: {error}", file=sys.stderr)
        return 2
    print(f"CustomNet app on http://{args.host}:{args.port} (Ctrl-C stops it)")
    ui.launch(page, args.host, args.port, block=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
