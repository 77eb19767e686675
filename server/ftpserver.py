"""Run the FTP artifact server on its own, as in the workshop: `python server/ftpserver.py`.

Same server `windpipe up` starts (settings from the environment or .env). Ctrl-C stops it.
"""

from windpipe.stack.ftp import serve

if __name__ == "__main__":
    serve()
