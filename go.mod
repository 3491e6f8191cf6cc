module github.com/earshot/earshot

go 1.26

require (
	github.com/deepgram/deepgram-go-sdk/v3 v3.5.0
	github.com/gorilla/websocket v1.5.3
	go.uber.org/goleak v1.3.0
	go.uber.org/zap v1.28.0
	go.yaml.in/yaml/v3 v3.0.6
)

require (
	github.com/dvonthenen/websocket v1.5.1-dyv.2 // indirect
	github.com/fatih/color v1.15.0 // indirect
	github.com/go-logr/logr v1.3.0 // indirect
	github.com/gorilla/schema v1.3.0 // indirect
	github.com/hokaccha/go-prettyjson v0.0.0-20211117102719-0474bc63780f // indirect
	github.com/mattn/go-colorable v0.1.13 // indirect
	github.com/mattn/go-isatty v0.0.17 // indirect
	go.uber.org/multierr v1.10.0 // indirect
	golang.org/x/sys v0.6.0 // indirect
	k8s.io/klog/v2 v2.110.1 // indirect
)
