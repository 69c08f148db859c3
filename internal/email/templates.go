package email

import (
	"bytes"
	"fmt"
	htmltemplate "html/template"
	"os"
	texttemplate "text/template"
)

// TemplateSource is one named template as configured: each part inline or
// read from a file. At least Text or HTML (inline or file) is required.
type TemplateSource struct {
	// Subject is a text/template for the subject line.
	Subject string
	// Text is a text/template for the plain-text body; TextFile names a
	// file holding it instead.
	Text, TextFile string
	// HTML is an html/template (contextual escaping of data) for the HTML
	// body; HTMLFile names a file holding it instead.
	HTML, HTMLFile string
}

type template struct {
	subject, text *texttemplate.Template
	html          *htmltemplate.Template
}

// Templates are parsed, named message templates. Safe for concurrent use.
type Templates struct {
	byName map[string]*template
}

// ParseTemplates parses every source once, at startup, so a syntax error
// stops the service instead of failing jobs. Missing keys in data are
// errors (a "Dear <no value>" email is worse than a failed job).
func ParseTemplates(srcs map[string]TemplateSource) (*Templates, error) {
	t := &Templates{byName: make(map[string]*template, len(srcs))}
	for _, name := range sortedKeys(srcs) {
		src := srcs[name]
		text, html := src.Text, src.HTML
		if src.TextFile != "" {
			if text != "" {
				return nil, fmt.Errorf("template %q: text and text_file are mutually exclusive", name)
			}
			b, err := os.ReadFile(src.TextFile)
			if err != nil {
				return nil, fmt.Errorf("template %q: %w", name, err)
			}
			text = string(b)
		}
		if src.HTMLFile != "" {
			if html != "" {
				return nil, fmt.Errorf("template %q: html and html_file are mutually exclusive", name)
			}
			b, err := os.ReadFile(src.HTMLFile)
			if err != nil {
				return nil, fmt.Errorf("template %q: %w", name, err)
			}
			html = string(b)
		}
		if text == "" && html == "" {
			return nil, fmt.Errorf("template %q: needs text or html", name)
		}
		var tpl template
		var err error
		if tpl.subject, err = texttemplate.New(name + ".subject").Option("missingkey=error").Parse(src.Subject); err != nil {
			return nil, fmt.Errorf("template %q: subject: %w", name, err)
		}
		if text != "" {
			if tpl.text, err = texttemplate.New(name + ".text").Option("missingkey=error").Parse(text); err != nil {
				return nil, fmt.Errorf("template %q: text: %w", name, err)
			}
		}
		if html != "" {
			if tpl.html, err = htmltemplate.New(name + ".html").Option("missingkey=error").Parse(html); err != nil {
				return nil, fmt.Errorf("template %q: html: %w", name, err)
			}
		}
		t.byName[name] = &tpl
	}
	return t, nil
}

// Has reports whether a template of that name exists.
func (t *Templates) Has(name string) bool {
	if t == nil {
		return false
	}
	_, ok := t.byName[name]
	return ok
}

// Execute renders template name with data. Errors are *FieldError
// ("template" or "data"), since they come from the job's payload.
func (t *Templates) Execute(name string, data map[string]any) (subject, text, html string, err error) {
	tpl, ok := t.byName[name]
	if !ok {
		return "", "", "", fieldErr("template", "no template named %q is configured", name)
	}
	var buf bytes.Buffer
	if err := tpl.subject.Execute(&buf, data); err != nil {
		return "", "", "", fieldErr("data", "template %q subject: %v", name, err)
	}
	subject = buf.String()
	if tpl.text != nil {
		buf.Reset()
		if err := tpl.text.Execute(&buf, data); err != nil {
			return "", "", "", fieldErr("data", "template %q text: %v", name, err)
		}
		text = buf.String()
	}
	if tpl.html != nil {
		buf.Reset()
		if err := tpl.html.Execute(&buf, data); err != nil {
			return "", "", "", fieldErr("data", "template %q html: %v", name, err)
		}
		html = buf.String()
	}
	return subject, text, html, nil
}
