module github.com/sidecar-state/sidecar-state/docs/clients/go

go 1.22

require github.com/PowerDNS/lmdb-go v1.9.3
