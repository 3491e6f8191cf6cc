package routing

import "fmt"

// Product is a part of Deepgram's API that a region may serve from a
// deployment of its own: Deepgram deploys Flux and Aura-2 on their own
// stacks, so one region can have one URL per product.
type Product string

// Products. The zero Product is everything no product deployment takes
// (models, text intelligence, and every product a region serves from its
// main deployment).
const (
	Listen Product = "listen" // Nova and Whisper speech to text: /v1/listen
	Flux   Product = "flux"   // Flux conversational speech to text: /v2/listen
	Speak  Product = "speak"  // Aura text to speech: /v1/speak, /v2/speak
	Agent  Product = "agent"  // the voice agent: /v1/agent/converse
)

// Products are the products a region may deploy on their own.
var Products = []Product{Listen, Flux, Speak, Agent}

const numProducts = 5 // the zero Product and Products

// productIndex is p's place in Table.serves; -1 for no product.
func productIndex(p Product) int {
	switch p {
	case "":
		return 0
	case Listen:
		return 1
	case Flux:
		return 2
	case Speak:
		return 3
	case Agent:
		return 4
	}
	return -1
}

// ProductOf is the product an API path belongs to; "" for the paths every
// deployment serves alike.
func ProductOf(path string) Product {
	switch path {
	case "/v1/listen":
		return Listen
	case "/v2/listen":
		return Flux
	case "/v1/speak", "/v2/speak":
		return Speak
	case "/v1/agent/converse":
		return Agent
	}
	return ""
}

// describe names p in an error.
func (p Product) describe() string {
	if p == "" {
		return "this path"
	}
	return string(p)
}

func (r *Region) group() string {
	if r.Group == "" {
		return r.Name
	}
	return r.Group
}

// indexProducts works out, for each product, the deployment each group
// offers for it: its own deployment of the product, else its main one.
func (t *Table) indexProducts() error {
	for _, g := range t.groups {
		var by [numProducts]int
		for i := range by {
			by[i] = -1
		}
		for i, r := range t.regions {
			if g&(1<<i) == 0 {
				continue
			}
			p := productIndex(r.Product)
			if by[p] >= 0 {
				return fmt.Errorf("routing: region %s: two deployments of %s", r.group(), r.Product.describe())
			}
			by[p] = i
		}
		for p := range by {
			i := by[p]
			if i < 0 {
				i = by[0] // the main deployment, if the group has one
			}
			if i >= 0 {
				t.serves[p] |= 1 << i
			}
		}
	}
	return nil
}
