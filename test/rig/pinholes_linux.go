package rig

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
)

// PinholeElements lists the elements of ftpalg's nftables pinhole sets and
// map in both families, as "ip {...}" JSON, on the firewall host (none
// where the table does not exist). It leaves out the all-zero element
// ftpalg adds and closes at once at start to probe the kernel.
func (r *Rig) PinholeElements(ctx context.Context) ([]string, error) {
	var elems []string
	for _, fam := range []string{"ip", "ip6"} {
		out, err := r.Run(ctx, Router, "nft", "-j", "list", "table", fam, "ftpalg")
		if err != nil {
			if strings.Contains(out, "No such file or directory") {
				continue
			}
			return nil, fmt.Errorf("listing nft table %s ftpalg: %w: %s", fam, err, out)
		}
		var doc struct {
			Nftables []map[string]struct {
				Elem []json.RawMessage `json:"elem"`
			} `json:"nftables"`
		}
		if err := json.Unmarshal([]byte(out), &doc); err != nil {
			return nil, fmt.Errorf("parsing nft -j list table %s ftpalg: %w", fam, err)
		}
		for _, obj := range doc.Nftables {
			for _, kind := range []string{"set", "map"} {
				for _, raw := range obj[kind].Elem {
					e := string(raw)
					if strings.Contains(e, `"0.0.0.0","0.0.0.0",0`) || strings.Contains(e, `"::","::",0`) {
						continue
					}
					elems = append(elems, fam+" "+e)
				}
			}
		}
	}
	return elems, nil
}
