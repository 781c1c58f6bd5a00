package main

// unitNice is the Nice= of deploy/ftpalg.service, which the bench runs
// ftpalg at by default (-ftpalg-nice) so that it measures ftpalg as that
// unit deploys it: in the path of every control packet, it must not wait
// for a CPU behind the FTP clients and servers that share the rig's
// machine (TestUnitNice keeps the two equal).
const unitNice = -10
