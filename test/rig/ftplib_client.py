"""FTP client job for the ftpalg test rig, using Python's ftplib.

Usage: python3 ftplib_client.py JOB_JSON

JOB_JSON holds host, port, user, password, mode (PORT, EPRT, PASV or
EPSV), op (get, put, list or getmany), remote (a list of paths) and local.
ftplib picks PORT/PASV on IPv4 and EPRT/EPSV on IPv6 by itself; the
subclass below forces the requested command instead, and trusts the
address in a 227 reply (ftplib ignores it by default since 3.x), so an
ALG that fails to rewrite it is caught. The control-channel exchange is
printed by ftplib's debug output ("*cmd* '...'", "*resp* '...'").
"""

import ftplib
import json
import os
import socket
import sys


class Client(ftplib.FTP):
    trust_server_pasv_ipv4_address = True

    def __init__(self, mode, **kw):
        self.mode = mode
        super().__init__(**kw)

    def makeport(self):
        sock = socket.create_server(("", 0), family=self.af, backlog=1)
        port = sock.getsockname()[1]
        host = self.sock.getsockname()[0]
        if self.mode == "PORT":
            self.sendport(host, port)
        else:
            self.sendeprt(host, port)
        sock.settimeout(self.timeout)
        return sock

    def makepasv(self):
        if self.mode == "PASV":
            return ftplib.parse227(self.sendcmd("PASV"))
        return ftplib.parse229(self.sendcmd("EPSV"), self.sock.getpeername())


def main():
    job = json.loads(sys.argv[1])
    ftp = Client(job["mode"], timeout=20)
    ftp.set_debuglevel(1)
    ftp.connect(job["host"], job["port"])
    ftp.login(job["user"], job["password"])
    ftp.set_pasv(job["mode"] in ("PASV", "EPSV"))
    op, remote, local = job["op"], job["remote"], job["local"]
    if op == "get":
        with open(local, "wb") as f:
            ftp.retrbinary("RETR " + remote[0], f.write)
    elif op == "put":
        with open(local, "rb") as f:
            ftp.storbinary("STOR " + remote[0], f)
    elif op == "list":
        with open(local, "w") as f:
            ftp.retrlines("LIST " + remote[0], lambda line: f.write(line + "\n"))
    elif op == "getmany":
        for path in remote:
            with open(os.path.join(local, os.path.basename(path)), "wb") as f:
                ftp.retrbinary("RETR " + path, f.write)
    else:
        raise ValueError("unknown op " + op)
    ftp.quit()


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # report any failure as one line and exit 1
        print("ftplib error: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        sys.exit(1)
