// Package deploy holds the files that put ftpalg on a router: the systemd
// unit (ftpalg.service), its environment file (ftpalg.default), an example
// configuration (ftpalg.toml) and example strict router firewalls in
// iptables-restore format that include ftpalg's chains (firewall.rules,
// firewall6.rules), the OpenWrt files (openwrt/) and the Debian packaging
// that `make deb` uses (debian/). Every other file here ships as an example
// under /usr/share/doc/ftpalg/examples. It has no Go code; its tests check that the files load
// into the kernel, agree with `ftpalg rules`, and that ftpalg works under
// exactly the unit's sandbox. See README.md.
package deploy
