// Command gotemplate renders Ollama Modelfile TEMPLATEs the way Ollama does, for
// `persona-export verify` (built on demand into the cache by persona_export/gotemplate).
// The tests use it too (tests/gotemplate_runner.py).
//
// Usage: gotemplate [IN.json [OUT.json]]. It reads one JSON object (IN.json, else stdin),
// {"cases": [{"template": "...", "messages": [...], "system": "...", "tools": [...]}]}, and
// writes {"results": [{"output": "..." or "error": "...", "mode": "...", "vars": [...],
// "tool_tag": "..."}]} (OUT.json, else stdout). Messages and tools are given as Ollama's
// /api/chat takes them (OpenAI-style tools; tool_calls with function.name and
// function.arguments; tool results with role "tool", tool_name, tool_call_id); data.go turns
// them into the shapes Ollama hands its templates. "vars" and "tool_tag" are what Ollama
// reads off the parsed TEMPLATE (inspect.go): its identifiers (capabilities) and the tag its
// tool-call parser looks for.
//
// The rendering follows Ollama's template/template.go (0.33 line): Go text/template with
// Option("missingkey=zero") and Ollama's functions (json, currentDate, yesterdayDate,
// toTypeScriptType: stubs with the same names and arities); "messages mode" when the
// template mentions .Messages (rendered once with .System, .Messages, .Tools, .Response),
// otherwise "legacy mode" (.System, .Prompt, .Response rendered per turn, everything after
// {{ .Response }} cut on the last turn). Consecutive messages of one role are merged with a
// blank line and every system message is joined into .System, as Ollama's collate() does.
// "system" is the Modelfile SYSTEM: Ollama's chat handler prepends it as a system message
// unless the conversation already starts with one.
//
// Only the standard library is used, so `go build` needs no network.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/template"
	"text/template/parse"
	"time"
)

type renderCase struct {
	Template string       `json:"template"`
	Messages []apiMessage `json:"messages"`
	System   string       `json:"system"`
	Tools    []apiTool    `json:"tools"`
}

type result struct {
	Output  *string  `json:"output,omitempty"`
	Error   string   `json:"error,omitempty"`
	Mode    string   `json:"mode,omitempty"`
	Vars    []string `json:"vars"`
	ToolTag string   `json:"tool_tag"`
	Think   []string `json:"thinking_tags"`
}

var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
	"currentDate": func(args ...string) string {
		return time.Now().Format("2006-01-02")
	},
	"yesterdayDate": func(args ...string) string {
		return time.Now().AddDate(0, 0, -1).Format("2006-01-02")
	},
	"toTypeScriptType": func(v any) string {
		return "any"
	},
}

// response is the {{ .Response }} node Ollama appends to templates that have neither
// .Messages nor .Response.
var response = parse.ActionNode{
	NodeType: parse.NodeAction,
	Pipe: &parse.PipeNode{
		NodeType: parse.NodePipe,
		Cmds: []*parse.CommandNode{{
			NodeType: parse.NodeCommand,
			Args:     []parse.Node{&parse.FieldNode{NodeType: parse.NodeField, Ident: []string{"Response"}}},
		}},
	},
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func parseTemplate(s string) (*template.Template, []string, error) {
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(s)
	if err != nil {
		return nil, nil, err
	}
	vars := templateVars(tmpl)
	if !contains(vars, "messages") && !contains(vars, "response") {
		tmpl.Tree.Root.Nodes = append(tmpl.Tree.Root.Nodes, &response)
	}
	return tmpl, vars, nil
}

func templateVars(t *template.Template) []string {
	set := map[string]bool{}
	for _, tt := range t.Templates() {
		if tt.Tree == nil {
			continue
		}
		for _, n := range tt.Root.Nodes {
			for _, id := range identifiers(n) {
				set[strings.ToLower(id)] = true
			}
		}
	}
	var vars []string
	for k := range set {
		vars = append(vars, k)
	}
	return vars
}

func identifiers(n parse.Node) []string {
	switch n := n.(type) {
	case *parse.ListNode:
		var names []string
		for _, c := range n.Nodes {
			names = append(names, identifiers(c)...)
		}
		return names
	case *parse.TemplateNode:
		return identifiers(n.Pipe)
	case *parse.ActionNode:
		return identifiers(n.Pipe)
	case *parse.BranchNode:
		names := identifiers(n.Pipe)
		for _, l := range []*parse.ListNode{n.List, n.ElseList} {
			if l != nil {
				names = append(names, identifiers(l)...)
			}
		}
		return names
	case *parse.IfNode:
		return identifiers(&n.BranchNode)
	case *parse.RangeNode:
		return identifiers(&n.BranchNode)
	case *parse.WithNode:
		return identifiers(&n.BranchNode)
	case *parse.PipeNode:
		var names []string
		for _, c := range n.Cmds {
			for _, a := range c.Args {
				names = append(names, identifiers(a)...)
			}
		}
		return names
	case *parse.FieldNode:
		return n.Ident
	case *parse.VariableNode:
		return n.Ident
	}
	return nil
}

// collate merges consecutive messages of one role (tool results excepted) and joins the
// system messages.
func collate(msgs []apiMessage) (string, []*apiMessage) {
	var system []string
	var collated []*apiMessage
	for i := range msgs {
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		if len(collated) > 0 && collated[len(collated)-1].Role == msgs[i].Role && msgs[i].Role != "tool" {
			collated[len(collated)-1].Content += "\n\n" + msgs[i].Content
		} else {
			m := msgs[i]
			collated = append(collated, &m)
		}
	}
	return strings.Join(system, "\n\n"), collated
}

// deleteNode removes the nodes for which fn is true (Ollama uses it to cut everything after
// {{ .Response }} on the last legacy turn).
func deleteNode(n parse.Node, fn func(parse.Node) bool) parse.Node {
	var walk func(n parse.Node) parse.Node
	walk = func(n parse.Node) parse.Node {
		if fn(n) {
			return nil
		}
		switch t := n.(type) {
		case *parse.ListNode:
			var nodes []parse.Node
			for _, c := range t.Nodes {
				if n := walk(c); n != nil {
					nodes = append(nodes, n)
				}
			}
			t.Nodes = nodes
			return t
		case *parse.IfNode:
			t.BranchNode = *(walk(&t.BranchNode).(*parse.BranchNode))
		case *parse.WithNode:
			t.BranchNode = *(walk(&t.BranchNode).(*parse.BranchNode))
		case *parse.RangeNode:
			t.BranchNode = *(walk(&t.BranchNode).(*parse.BranchNode))
		case *parse.BranchNode:
			t.List = walk(t.List).(*parse.ListNode)
			if t.ElseList != nil {
				t.ElseList = walk(t.ElseList).(*parse.ListNode)
			}
		case *parse.ActionNode:
			n := walk(t.Pipe)
			if n == nil {
				return nil
			}
			t.Pipe = n.(*parse.PipeNode)
		case *parse.PipeNode:
			var commands []*parse.CommandNode
			for _, c := range t.Cmds {
				var args []parse.Node
				for _, a := range c.Args {
					if n := walk(a); n != nil {
						args = append(args, n)
					}
				}
				if len(args) == 0 {
					return nil
				}
				c.Args = args
				commands = append(commands, c)
			}
			if len(commands) == 0 {
				return nil
			}
			t.Cmds = commands
		}
		return n
	}
	return walk(n)
}

func render(c renderCase) (string, string, error) {
	tmpl, vars, err := parseTemplate(c.Template)
	if err != nil {
		return "", "", err
	}
	msgs := c.Messages
	if c.System != "" && (len(msgs) == 0 || msgs[0].Role != "system") {
		msgs = append([]apiMessage{{Role: "system", Content: c.System}}, msgs...)
	}
	system, messages := collate(msgs)
	var b bytes.Buffer
	if contains(vars, "messages") {
		err := tmpl.Execute(&b, map[string]any{
			"System":     system,
			"Messages":   templateMessages(messages),
			"Tools":      templateToolsOf(c.Tools),
			"Response":   "",
			"Think":      false,
			"IsThinkSet": false,
		})
		return b.String(), "messages", err
	}

	system = ""
	var prompt, resp string
	execute := func() error {
		if err := tmpl.Execute(&b, map[string]any{
			"System": system, "Prompt": prompt, "Response": resp, "Think": false, "IsThinkSet": false,
		}); err != nil {
			return err
		}
		system, prompt, resp = "", "", ""
		return nil
	}
	for _, m := range messages {
		switch m.Role {
		case "system":
			if prompt != "" || resp != "" {
				if err := execute(); err != nil {
					return "", "legacy", err
				}
			}
			system = m.Content
		case "user":
			if resp != "" {
				if err := execute(); err != nil {
					return "", "legacy", err
				}
			}
			prompt = m.Content
		case "assistant":
			resp = m.Content
		}
	}
	var cut bool
	nodes := deleteNode(tmpl.Root.Copy(), func(n parse.Node) bool {
		if field, ok := n.(*parse.FieldNode); ok && contains(field.Ident, "Response") {
			cut = true
			return false
		}
		return cut
	})
	tree := parse.Tree{Root: nodes.(*parse.ListNode)}
	last, err := template.New("").AddParseTree("", &tree)
	if err != nil {
		return "", "legacy", err
	}
	if err := last.Execute(&b, map[string]any{
		"System": system, "Prompt": prompt, "Response": resp, "Think": false, "IsThinkSet": false,
	}); err != nil {
		return "", "legacy", err
	}
	return b.String(), "legacy", nil
}

func main() {
	var raw []byte
	var err error
	if len(os.Args) > 1 {
		raw, err = os.ReadFile(os.Args[1])
	} else {
		raw, err = io.ReadAll(os.Stdin)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var req struct {
		Cases []renderCase `json:"cases"`
	}
	if err := json.Unmarshal(raw, &req); err != nil {
		fmt.Fprintln(os.Stderr, "bad input:", err)
		os.Exit(2)
	}
	results := make([]result, 0, len(req.Cases))
	for _, c := range req.Cases {
		out, mode, err := render(c)
		r := result{Mode: mode, Vars: []string{}}
		if err != nil {
			r.Error = err.Error()
		} else {
			o := out
			r.Output = &o
		}
		if tmpl, vars, perr := parseTemplate(c.Template); perr == nil {
			sort.Strings(vars)
			r.Vars, r.ToolTag = vars, toolCallTag(tmpl)
			opening, closing := thinkingTags(tmpl)
			r.Think = []string{opening, closing}
		}
		results = append(results, r)
	}
	var out io.Writer = os.Stdout
	if len(os.Args) > 2 {
		f, err := os.Create(os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		defer f.Close()
		out = f
	}
	enc := json.NewEncoder(out)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(map[string]any{"results": results}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
}
