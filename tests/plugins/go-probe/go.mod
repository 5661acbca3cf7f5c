module sluice.dev/tests/go-probe

go 1.24

require sluice.dev/sluice v0.1.0

replace sluice.dev/sluice => ../../../sdk/go
