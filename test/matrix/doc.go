// Package matrix runs ftpalg's interoperability matrix: every FTP server
// (vsftpd, proftpd, pure-ftpd, and proftpd with MasqueradeAddress and
// PassivePorts behind a port forward) with every client (curl, lftp,
// tnftp, Python's ftplib, github.com/jlaffaye/ftp) in every data mode
// (PORT, EPRT, PASV, EPSV) on every rig topology, for four cases: a 5 MB
// download, a 1 MB upload, 200 files over one control connection, and a
// directory listing. See TestMatrix and test/README.md.
//
// The package has no non-test code; this file only documents it.
package matrix
