// Command coredns is CoreDNS with only the plugins the test cluster's DNS needs, the way CoreDNS
// documents custom builds: upstream's main imports core/plugin, which links every plugin (cloud
// DNS providers, tracing, ...) and their dependencies; the cluster's Corefile uses only these.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	coremain.Run()
}
